//! Daily usage counters (calls and refusals per team, user, virtual server and
//! tool), for quotas that survive restarts and for cost attribution.
