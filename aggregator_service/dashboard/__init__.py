"""The live dashboard: server-rendered pages under `/dashboard`, for the admin and viewers."""

from aggregator_service.dashboard.router import router

__all__ = ["router"]
