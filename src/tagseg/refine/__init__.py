"""Refinement of class activation maps: perimeter fitting, pixel affinities, random walk, dense CRF."""
