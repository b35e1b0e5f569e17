"""ensemble-lab: is my efficient ensemble really an ensemble?"""

__version__ = "0.1.0"
