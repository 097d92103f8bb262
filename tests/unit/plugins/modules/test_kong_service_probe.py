"""Unit tests for kong_service's readiness probe (which URL judges a started node)."""

from ansible_collections.kongops.upgrade.plugins.modules.kong_service import probe


class Response:
    def __init__(self, status, body=None):
        self.status = status
        self._body = body or {}

    def json(self):
        return self._body


class Api:
    def __init__(self, base_url, answers):
        self.base_url = base_url
        self.answers = answers
        self.asked = []

    def request(self, method, path):
        self.asked.append(path)
        return self.answers[path]


def test_ready_by_status_ready_on_3_3_and_later():
    status = Api("http://s", {"/status/ready": Response(200)})
    assert probe(None, status) == (True, "http://s/status/ready")


def test_not_ready_says_what_status_ready_answered():
    status = Api("http://s", {"/status/ready": Response(503, {"message": "router builds not yet complete"})})
    assert probe(None, status) == (False, "http://s/status/ready answered 503: router builds not yet complete")


def test_a_version_without_status_ready_is_judged_by_the_admin_api():
    status = Api("http://s", {"/status/ready": Response(404)})
    admin = Api("http://a", {"/status": Response(200)})
    assert probe(admin, status) == (True, "http://a/status")


def test_without_an_admin_url_2_8_is_judged_by_the_status_api_s_own_status():
    # Kong 2.8 has no /status/ready (404); its status listener serves /status
    status = Api("http://s", {"/status/ready": Response(404), "/status": Response(200)})
    assert probe(None, status) == (True, "http://s/status")
    assert status.asked == ["/status/ready", "/status"]


def test_a_data_plane_that_answers_503_before_its_first_configuration_counts_as_started():
    status = Api("http://s", {"/status/ready": Response(503)})
    assert probe(None, status, data_plane=True) == (True, "http://s/status/ready")
