"""The relay: takes flexible jobs from managers, forwards them to destinations, carries events back."""
