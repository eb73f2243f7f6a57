"""Lightning callbacks: results table and sample visualisations."""
