//! Twin documents (to be written).
