"""The Carnet scheduler: a Hub-managed service that runs jobs while everybody is logged out."""
