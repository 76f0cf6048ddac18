//! SAS tokens and policies (to be written).
