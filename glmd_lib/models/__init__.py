"""Loading teachers, building/saving/loading students, inspecting models."""
