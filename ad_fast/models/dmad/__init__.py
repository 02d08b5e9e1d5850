"""DMAD: dual memory banks (normal coreset + abnormal bank), knowledge enhancement and a score mapper."""

from .model import DMAD

__all__ = ["DMAD"]
