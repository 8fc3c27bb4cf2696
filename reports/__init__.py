"""Reading what the farm measured: query rows, render them, plot them, compare sweeps."""
