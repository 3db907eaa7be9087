"""Start here: a guided tour in seven steps, for a class or a first visit."""
import streamlit as st

from ui import context
from ui.tour_steps import STEPS, link

context.page_start(__file__)
st.title("Start here")
st.caption("Seven steps through what compression does to a real model. Each link sets the controls in the "
           "sidebar and opens the page to look at; the sidebar's model stays (both offline models work). "
           "Come back here for the next step.")
current = st.session_state.get("tour_step")
for i, step in enumerate(STEPS):
    with st.container(border=True):
        st.markdown(f"**{i + 1}. {step.title}**" + ("  · the last one opened" if i == current else ""))
        st.markdown(step.look)
        st.page_link(step.page, label=f"Open step {i + 1}: {step.recipe.describe()}", icon=":material/arrow_forward:",
                     query_params=link(i))
context.mark("tour")
