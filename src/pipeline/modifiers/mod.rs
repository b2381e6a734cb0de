//! Every method as a modifier of the block driver, one file each (see [`super`] for the
//! three roles). A new method is a file here plus one line in
//! [`super::recipe::ModifierSpec`].

pub mod activation;
pub mod awq;
pub mod gptq;
pub mod hqq;
pub mod measure;
pub mod rtn;
pub mod smooth;
