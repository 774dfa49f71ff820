"""codash dashboard: `streamlit run app/main.py`.

Reads and writes only through jobs.api; never touches Redis keys or torch directly.
"""

import streamlit as st

from app import auth, nav

st.set_page_config(page_title="codash · catastrophic overfitting, live", page_icon="📉", layout="wide")
auth.require_password()
current = st.navigation(nav.pages(), position="top")
nav.follow_shared_link(current, st.query_params)
current.run()
