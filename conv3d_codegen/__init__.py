"""conv3d-codegen: CUDA kernels generated for each torch.nn.Conv3d configuration."""
__version__ = "0.1.0"
