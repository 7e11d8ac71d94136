//! Shared test support: the moto server launcher the end-to-end tests start.

pub mod moto;
