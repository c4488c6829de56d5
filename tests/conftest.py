from s3server import *  # noqa
from fault_proxy import *  # noqa
from moto_server import *  # noqa
