"""The ground floor: errors, the console's name, device probing and progress. Imports nothing else of the package."""
