//! Arbitrary bytes through ferrohub's MQTT framing and every topic, filter,
//! property-bag and username parser. See `ferrohub_mqtt::fuzz_decode`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferrohub_mqtt::fuzz_decode(data);
});
