//! Shared test support: the moto server launcher and helpers for driving the binary.

pub mod moto;
