"""Launch templates: the sbatch script that runs the trainer on Slurm."""

from .render import render_sbatch

__all__ = ["render_sbatch"]
