//! IoT Hub connection strings (to be written).
