//! Decoding and encoding image files.
