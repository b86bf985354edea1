//! crossbatch-experiment: a series of serving set-ups measured in one run. An
//! experiment file (`experiments/*.toml`, see [`spec`]) names server variants and a
//! driver sweep; [`run`] measures every variant on a fresh server with one collector;
//! [`render`] writes the variants side by side.

pub mod render;
pub mod run;
pub mod spec;
