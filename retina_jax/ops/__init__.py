"""Optional custom kernels (see onednn_conv)."""
