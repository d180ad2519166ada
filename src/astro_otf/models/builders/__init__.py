"""Code that builds the shipped models' files, so that each one can be regenerated and checked.

A model is data (a manifest plus files whose sha256 the manifest records); the modules here are
how some of that data was made. Building needs the ``onnx`` package (the ``build`` extra); the
service itself only reads the files with ONNX Runtime and never imports these modules.
"""
