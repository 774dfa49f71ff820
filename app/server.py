"""What `codash up` serves: `streamlit run app/server.py` runs the dashboard (app/main.py) behind
app.guard, codash's host allow-list and security headers (Streamlit finds the st.App below and serves it).
"""

import streamlit as st
from starlette.middleware import Middleware

from app.guard import Guard

app = st.App("main.py", middleware=[Middleware(Guard)])
