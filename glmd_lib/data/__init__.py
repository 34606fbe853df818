"""Where the data lives and how text becomes token blocks."""
