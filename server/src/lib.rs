//! crossbatch-server: the cross-encoder (`cross-encoder/ms-marco-MiniLM-L-6-v2`) on
//! Burn, and the pieces around it (model source, stand-in, backend choice, bench).

pub mod backend;
pub mod bench;
pub mod model;
pub mod pairs;
pub mod pyjson;
pub mod source;
pub mod standin;
pub mod tokenize;
