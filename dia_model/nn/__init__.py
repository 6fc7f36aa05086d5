"""The network: the Dia model, checkpoint key layouts and loading, devices, and the CPU matmul kernel."""
