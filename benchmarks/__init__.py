"""Side-by-side speed ratios of ensemble-lab against plain PyTorch references; see README.md here."""
