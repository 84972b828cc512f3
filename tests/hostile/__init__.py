"""Tests written as the attack: hostile jobs, specs, peers, pages and files against real nodes."""
