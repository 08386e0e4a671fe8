//! SQL store (being written)
