"""The audit: trains (or reads) reference designs through the search and reports how far its ranking
agrees with the target's (`python -m audit`)."""
