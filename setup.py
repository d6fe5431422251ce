"Packaging for dialsum, read from `settings.ini` (the nbdev 2 layout)."
from configparser import ConfigParser
from pathlib import Path
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read(Path(__file__).parent/'settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']
lic = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}[cfg['license']]
readme = Path(__file__).parent/'README.md'

setuptools.setup(
    name=cfg['lib_name'], version=cfg['version'], description=cfg['description'],
    long_description=readme.read_text(encoding='utf-8') if readme.exists() else cfg['description'],
    long_description_content_type='text/markdown',
    author=cfg['author'], author_email=cfg['author_email'], license=lic[0], keywords=cfg['keywords'].split(),
    classifiers=['Development Status :: 3 - Alpha', 'Intended Audience :: Developers',
                 'License :: ' + lic[1], 'Natural Language :: English', 'Natural Language :: Korean',
                 'Programming Language :: Python :: 3'],
    packages=setuptools.find_packages(include=['dialsum', 'dialsum.*']),
    include_package_data=True, zip_safe=False, python_requires='>=' + cfg['min_python'],
    install_requires=cfg['requirements'].split(),
    extras_require={'dev': cfg['dev_requirements'].split(), 'gpu': cfg.get('gpu_requirements', '').split(),
                    'track': cfg.get('track_requirements', '').split()},
    entry_points={'console_scripts': cfg['console_scripts'].split(),
                  'nbdev': [f"{cfg['lib_name']}={cfg['lib_name']}._modidx:d"]},
)
