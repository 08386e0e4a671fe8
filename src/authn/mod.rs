//! Who is calling: credentials from headers, the master key, virtual keys (cached).
pub mod api_key;
