"""The prepare stage: dataset sources, splits, transforms, the prepared-image store and its loader."""
