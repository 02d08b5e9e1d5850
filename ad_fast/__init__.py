"""ad_fast: industrial visual anomaly detection (MetaUAS, OneNIP, DMAD, ReDi) on fused C++/CUDA kernels."""

__version__ = "0.1.0"
