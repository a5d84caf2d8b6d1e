"""tinycnn.models"""
