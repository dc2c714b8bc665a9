"""SFEMC: service function endpoint management and control (SFEMC-3..7).

Places, boots and connects service function endpoints (SFEs) on clusters, keeps them in the
states the provider's policies ask for, and packages SF images.
"""
