"""jaxtricks."""
