"""Rating studies: design, storage, pre-generation, scheduling, analysis, export."""
