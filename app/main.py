"""codash dashboard: `streamlit run app/main.py`.

Reads and writes only through jobs.api; never touches Redis keys or torch directly.
"""

import streamlit as st

from app import auth, nav

st.set_page_config(page_title="codash · catastrophic overfitting, live", page_icon="📉", layout="wide")
# The page is resolved before the sign-in form, so signing in on /runs lands on Runs (menu hidden till then).
current = st.navigation(nav.pages(), position="top" if auth.signed_in() else "hidden")
auth.require_password()
nav.follow_shared_link(current, st.query_params)
current.run()
