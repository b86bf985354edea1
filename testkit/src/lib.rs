//! crossbatch-testkit: what the model's and the server's tests share and a server
//! does not need. A `[dev-dependencies]` entry only.

pub mod parity;
