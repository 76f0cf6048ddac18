//! Arbitrary bytes as a device's HTTPS telemetry batch
//! (`application/vnd.microsoft.iothub.json`). See `ferrohub_mqtt::fuzz_batch`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferrohub_mqtt::fuzz_batch(data);
});
