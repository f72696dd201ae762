#![no_std]
// The library target exists so that `vxprobe` can name this crate as a build-dependency and
// cargo rebuilds the kernel programs when their sources change.
