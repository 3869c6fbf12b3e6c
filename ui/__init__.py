"""The Gradio app's handlers and HTML rendering; app.py wires them to components."""
