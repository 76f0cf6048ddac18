//! The ferrohub hub process: TLS material, policies, the HTTPS service API.

pub mod hubfile;
