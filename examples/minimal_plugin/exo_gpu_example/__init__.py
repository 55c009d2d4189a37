"""exo-gpu-example: the smallest complete exo-gpu-plugins backend, device memory as bytearrays."""
