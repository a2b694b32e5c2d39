//! The shared temporary root (`efs_testkit::root`) and the rest of the test kit.
#![allow(dead_code)]

pub use efs_testkit::root::*;
pub use efs_testkit::*;
