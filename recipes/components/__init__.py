"""Reusable building blocks of the recipes: data, models, losses, optimisation, tracking."""
