//! CUDA kernels for MEFT (feature cuda); CPU builds expose the same names returning NotCompiledWithCuda.
