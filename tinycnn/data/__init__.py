"""tinycnn.data"""
