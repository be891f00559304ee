//! The wgpu executor (WGSL kernels in `shaders/`).
